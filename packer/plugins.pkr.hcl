# Packer 1.7 and later: the amazon-ebs builder comes from this plugin (`packer init packer/`).
# Packer 1.6.6 builds the template file alone (`packer build packer/volagent.pkr.hcl`), as
# the builder is part of it and this block is unknown to it.
packer {
  required_plugins {
    amazon = {
      version = ">= 1.2.0"
      source  = "github.com/hashicorp/amazon"
    }
  }
}
