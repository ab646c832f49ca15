"""crtforge stages: one module per stage, plain functions that doit calls (wiring lives in tasks.wiring)."""
