#!/usr/bin/python
"""A warning in the play's output ([WARNING]: ...) that neither fails nor changes anything: the role says what it
cannot fix on its own (node_exporter reading another textfile directory)."""
from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: afmetrics_warn
short_description: Give a warning, change nothing
description: Shows O(msg) as an Ansible warning; never fails, never changes.
options:
  msg:
    description: The warning.
    type: str
    required: true
author: afmetrics
"""

EXAMPLES = r"""
- name: Warn
  afmetrics_warn:
    msg: node_exporter reads another directory
"""

RETURN = r"""
msg:
  description: The warning given.
  type: str
  returned: always
"""


def main():
    module = AnsibleModule(argument_spec={"msg": {"type": "str", "required": True}}, supports_check_mode=True)
    module.warn(module.params["msg"])
    module.exit_json(changed=False, msg=module.params["msg"])


if __name__ == "__main__":
    main()
