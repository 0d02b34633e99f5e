"""What an event is and the rules on it: the input rules and the seed's output shape
(``schemas``), and the status rules every status change goes through (``rules``).
"""
