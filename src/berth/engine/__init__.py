"""The daemon's services and their state: containers, images, system; the monitor."""
