"""AWS: instance metadata, EFS discovery, Auto Scaling health reports."""
