"""Install Ansible's collection loader before any test here imports ``ansible_collections.*``.

Otherwise the first ``from ansible_collections.han.infra.plugins.module_utils ...`` binds
``ansible_collections`` as a plain namespace package, and the lookup loader can no longer find
``han.infra`` plugins in the same process.
"""

from ansible.plugins.loader import init_plugin_loader

from tests.conftest import REPO

init_plugin_loader([str(REPO / "collections")])
