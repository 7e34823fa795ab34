"""`volagent doctor`: checks of the host and of AWS, each with the fix it needs."""
