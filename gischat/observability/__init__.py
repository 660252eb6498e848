"""What the server tells its operators: Prometheus metrics and logs that a flood cannot flood."""
