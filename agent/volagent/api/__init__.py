"""The status API on the local socket, its cached document, its client and its human view."""
