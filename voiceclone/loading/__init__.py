"""Model folders: the HyperPyYAML recipe, the config, loading weights, converting and inspecting, the demo model."""
