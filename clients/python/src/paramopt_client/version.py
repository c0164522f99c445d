"""The package's version, and the server API version it speaks."""

#: The major version follows the API version: 1.x speaks /v1.
__version__ = "1.0.0"
API_VERSION = "v1"
