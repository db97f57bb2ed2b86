"""`clipmill browse`: a small web page over the LanceDB pool (see server.py)."""
