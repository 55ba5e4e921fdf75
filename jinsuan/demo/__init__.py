"""``jinsuan demo``: the whole platform on one machine, with simulated sites and a dispatcher.

Part of the composition root: it assembles the platform (``jinsuan.serve``) and real agents
(``agents``) around simulated hardware, and sends a simulated past through the intake.
"""
