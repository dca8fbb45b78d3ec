"""Plan -> [Artifact]: the jinja environment, the targets, quoting, paths and the output tree."""
