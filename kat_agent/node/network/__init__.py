"""The node's network: overlay, cluster DNS and ingress."""
