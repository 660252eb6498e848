"""Work that grows with what a client sends (images, layers, big frames), done in worker processes."""
