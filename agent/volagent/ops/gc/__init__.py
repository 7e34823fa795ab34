"""`volagent gc`: finding unused namespaces, the trash, sizing and removing trees."""
