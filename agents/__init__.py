"""What runs at a site: the agent daemon, its probes, its durable spool and its uploader.

Nothing here imports the platform's server side; the agent talks to the platform only through
``jinsuan.wire`` and HTTP.
"""
