"""Portal views, one module per area. Each view calls one service or selector and renders."""
