"""VEs: containers with their own process tree, namespaces, address and private area."""
