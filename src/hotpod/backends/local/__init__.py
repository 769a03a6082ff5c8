"""The embedded local backend: pods are detached process groups on this machine."""
