"""The configuration example of the contract page, verbatim: every key with its default,
but for `rack`."""

CONTRACT_EXAMPLE = """
rack = "myrack"
host_id = ""
mount_point = "/volumes"
state_dir = "/var/lib/volagent"

[mount]
type = "auto"
file_system_id = ""
discover_tag = ""
region = ""
source = ""
local_path = "/var/lib/volagent/local"
options = "nfsvers=4.1,rsize=1048576,wsize=1048576,hard,timeo=600,retrans=2,noresvport"
mount_program = "mount"
probe_interval_s = 5
probe_timeout_s = 3
allow_local_fallback = false

[aws]
imds_endpoint = "http://169.254.169.254"
endpoint_url = ""

[docker]
url = "unix:///var/run/docker.sock"
rack_label = "convox.rack"
app_label = "convox.app"
service_label = "convox.service"

[directories]
owner = "0:0"
mode = "0755"

[api]
socket = "/run/volagent/volagent.sock"

[guard]
enabled = false
plugin_socket = "/run/docker/plugins/volagent.sock"
when_unhealthy = "deny"
violations = "deny"
"""
