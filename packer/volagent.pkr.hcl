# An AMI for the instances of a rack: the base image (Amazon Linux 2023 by default) with
# the NFS client, amazon-efs-utils, Docker and volagent installed by provision.sh from the
# release bundle (`make dist`), the rack's config, the units enabled. volagent mounts the
# filesystem and starts before Docker at the first boot of each instance.
#
#   make dist ami                                  (AWS credentials in the environment)
#   make ami PACKER_VARS='-var rack_config=rack.toml -var region=eu-west-1'
#
# Written for Packer's HCL2 as old as 1.6.6 (Debian's); newer Packer needs the amazon
# plugin, declared in plugins.pkr.hcl (`packer init packer/`).

variable "region" {
  type        = string
  default     = "us-east-1"
  description = "AWS region the AMI is built in"
}

variable "source_ami_name" {
  type        = string
  default     = "al2023-ami-2023.*"
  description = "name filter of the base image (the newest match is used)"
}

variable "source_ami_owners" {
  type        = list(string)
  default     = ["amazon"]
  description = "owners of the base image"
}

variable "architecture" {
  type        = string
  default     = "x86_64"
  description = "x86_64 or arm64 (then pick a Graviton instance_type, e.g. t4g.small)"
  validation {
    condition     = contains(["x86_64", "arm64"], var.architecture)
    error_message = "The architecture variable must be x86_64 or arm64."
  }
}

variable "instance_type" {
  type        = string
  default     = "t3.small"
  description = "instance type of the build instance"
}

variable "ssh_username" {
  type        = string
  default     = "ec2-user"
  description = "login user of the base image (ec2-user on Amazon Linux, admin on Debian, ubuntu on Ubuntu)"
}

variable "subnet_id" {
  type        = string
  default     = ""
  description = "subnet of the build instance (default: the default VPC's)"
}

variable "volagent_version" {
  type        = string
  default     = "0.7.0"
  description = "the volagent release baked in; its bundle is dist/volagent-VERSION-bundle.tar.gz"
}

variable "bundle" {
  type        = string
  default     = ""
  description = "path of the release bundle (default: the one make dist builds for volagent_version)"
}

variable "rack_config" {
  type        = string
  default     = ""
  description = "the rack's volagent.toml baked in as /etc/volagent/volagent.toml (default: examples/volagent.toml)"
}

variable "guard" {
  type        = string
  default     = "auto"
  description = "auto (as [guard] enabled in the config says), on or off: the Docker authorization plugin in daemon.json"
  validation {
    condition     = contains(["auto", "on", "off"], var.guard)
    error_message = "The guard variable must be auto, on or off."
  }
}

variable "ami_name_prefix" {
  type        = string
  default     = "volagent"
  description = "the AMI is named PREFIX-VERSION-TIMESTAMP"
}

variable "tags" {
  type        = map(string)
  default     = {}
  description = "extra tags of the AMI"
}

locals {
  bundle      = var.bundle != "" ? var.bundle : "${path.root}/../dist/volagent-${var.volagent_version}-bundle.tar.gz"
  rack_config = var.rack_config != "" ? var.rack_config : "${path.root}/../examples/volagent.toml"
  timestamp   = formatdate("YYYYMMDDhhmmss", timestamp())
}

source "amazon-ebs" "volagent" {
  region        = var.region
  instance_type = var.instance_type
  ssh_username  = var.ssh_username
  subnet_id     = var.subnet_id
  ami_name      = "${var.ami_name_prefix}-${var.volagent_version}-${local.timestamp}"

  # IMDSv2 only (instance metadata with a session token), which is all volagent speaks:
  # required on the build instance, and the AMI's instances default to it (imds_support).
  # Packer >= 1.7 with the amazon plugin; Packer 1.6.6's builder knows neither setting.
  # imds: begin
  imds_support = "v2.0"
  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }
  # imds: end

  source_ami_filter {
    filters = {
      name                  = var.source_ami_name
      architecture          = var.architecture
      "virtualization-type" = "hvm"
      "root-device-type"    = "ebs"
    }
    owners      = var.source_ami_owners
    most_recent = true
  }

  tags = merge(var.tags, {
    Name             = "${var.ami_name_prefix}-${var.volagent_version}"
    volagent_version = var.volagent_version
  })
}

build {
  sources = ["source.amazon-ebs.volagent"]

  provisioner "file" {
    source      = local.bundle
    destination = "/tmp/volagent-bundle.tar.gz"
  }

  provisioner "file" {
    source      = local.rack_config
    destination = "/tmp/volagent.toml"
  }

  # Packages, volagent, config, units; volagent is enabled, not started: the filesystem
  # is mounted by each instance at its boot, never on the build instance.
  provisioner "shell" {
    script = "${path.root}/provision.sh"
    environment_vars = [
      "VOLAGENT_BUNDLE=/tmp/volagent-bundle.tar.gz",
      "VOLAGENT_CONFIG_SRC=/tmp/volagent.toml",
      "VOLAGENT_GUARD=${var.guard}",
    ]
    execute_command = "chmod +x {{ .Path }}; sudo env {{ .Vars }} bash {{ .Path }}"
  }

  provisioner "shell" {
    inline = [
      "/opt/volagent/bin/volagent --version",
      "sudo /opt/volagent/bin/volagent check-config",
      "sudo systemctl is-enabled volagent.service volagent-api.socket",
      "sudo rm -f /tmp/volagent-bundle.tar.gz /tmp/volagent.toml",
    ]
  }

  post-processor "manifest" {
    output     = "${path.root}/../dist/ami-manifest.json"
    strip_path = true
  }
}
