"""The task side of federation: local training loops, client round logic, evaluation, the wire
format. Transport-free: the in-process runtime and the Flower apps both call into it."""
