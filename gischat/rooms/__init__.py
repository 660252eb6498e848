"""The conversations of an instance: rooms, their sockets and nicknames, outboxes, history."""
