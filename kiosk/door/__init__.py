"""The door loop: camera, tracking, decisions, the relay, the service around them, watchdog and notifications."""
