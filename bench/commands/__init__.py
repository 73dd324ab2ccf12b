"""What a command does, apart from parsing and printing: a run session starts and
locks the run folder, records its configuration, runs the cells through the engine and writes
what the run leaves behind.
"""
