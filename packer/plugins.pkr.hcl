# Packer 1.7 and later: the amazon-ebs builder comes from this plugin (`packer init packer/`).
# Packer 1.6.6's built-in builder cannot build the template: it lacks the IMDSv2 settings.
packer {
  required_plugins {
    amazon = {
      version = ">= 1.2.0"
      source  = "github.com/hashicorp/amazon"
    }
  }
}
