"""Stage 7, serving: the request handler (no Ray), the Ray Serve application and its upload page."""
