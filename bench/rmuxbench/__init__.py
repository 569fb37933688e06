"""
The parts of rmux's benchmark; C{bench/run.py} is the command.
"""
