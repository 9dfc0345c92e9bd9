"""The wire: job requests to and from signed JSON, and the door that admits them."""
