"""stack.yaml: the typed spec, its YAML loader with line:col, and the built-in profiles."""
