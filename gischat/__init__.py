"""gischat: real-time chat rooms for GIS people, relayed live and never stored."""
