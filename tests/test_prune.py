"""A generated script carries the functions its plan calls, no others (generator/prune.py).

That the pruned scripts do what the whole ones did is shown by the trace tests (their fixtures, recorded before
pruning, are unchanged) and by shellcheck, which names any variable a kept function reads that is gone.
"""

from __future__ import annotations

import re

import pytest

from generator import prune
from generator.errors import BakegenError
from generator.model import Arch, Format
from generator.plan import Options, make_plan
from generator.resolve import descriptor_set, load_distro
from tests.helpers import matrix, render_files, render_script

END = "END"


def test_unreachable_functions_go_with_their_comments() -> None:
    script = (
        "#!/bin/bash\n# header: kept\nset -e\n\n"
        "# called from main\nused() { helper; }\n\n"
        "# what helper does\n# (two lines)\nhelper() {\n  printf 'helper\\n'\n}\n\n"
        "# never called\nunused() {\n  only_from_unused\n}\n\n"
        "only_from_unused() { :; }\n\n"
        "# mentions in a comment are no call: unused\nalso_unused() { :; }\n\n"
        "main() {\n  used\n  trap cleanup EXIT\n  retry 3 in_an_argument\n}\n\n"
        'cleanup() { :; }\nin_an_argument() { :; }\n\nmain "$@"\n'
    )
    assert prune.drop_unused_functions(script, END) == (
        "#!/bin/bash\n# header: kept\nset -e\n\n"
        "# called from main\nused() { helper; }\n\n"
        "# what helper does\n# (two lines)\nhelper() {\n  printf 'helper\\n'\n}\n\n"
        "main() {\n  used\n  trap cleanup EXIT\n  retry 3 in_an_argument\n}\n\n"
        'cleanup() { :; }\nin_an_argument() { :; }\n\nmain "$@"\n'
    )


def test_heredoc_bodies_are_files_not_code() -> None:
    """A shell file the script writes has functions of its own, and its words call nothing in the script."""
    script = "#!/bin/bash\nwrite() {\n  cat >/tmp/x <<'END'\nlog() {\n  unused\n}\nEND\n}\n\nunused() { :; }\n\nwrite\n"
    assert prune.drop_unused_functions(script, END) == (
        "#!/bin/bash\nwrite() {\n  cat >/tmp/x <<'END'\nlog() {\n  unused\n}\nEND\n}\n\nwrite\n"
    )


@pytest.mark.parametrize(
    ("script", "message"),
    [
        ("f() {\n  :\n", "function f is not closed"),
        ("f() {\n  cat <<'END'\n}\n", "a heredoc is not closed by END"),
        ("f() { :;\n}\nf\n", "cannot tell where function f ends"),
        ("f() { :; }\nf() { :; }\nf\n", "a function is defined twice"),
    ],
)
def test_scripts_it_cannot_read_are_errors(script: str, message: str) -> None:
    with pytest.raises(BakegenError, match=re.escape(message)):
        prune.drop_unused_functions(script, END)


HEREDOC = re.compile(r"<<'BAKEGEN_EMBEDDED_FILE_END'\n.*?^BAKEGEN_EMBEDDED_FILE_END$", re.MULTILINE | re.DOTALL)


def _code(script: str) -> str:
    """The script without the files it writes (heredoc bodies)."""
    return HEREDOC.sub("", script)


def _functions(script: str) -> set[str]:
    return set(re.findall(r"^([a-z_]+)\(\) \{", _code(script), re.MULTILINE))


@pytest.mark.parametrize(("distro", "arch"), matrix())
@pytest.mark.parametrize("cdi", [False, True])
def test_each_plan_carries_its_own_code_paths(distro: str, arch: str, cdi: bool) -> None:
    """What the plan says decides which paths are in the script (not the distribution's name)."""
    script = render_script(distro, arch=arch, cdi=cdi)
    plan = make_plan(load_distro(descriptor_set(), distro), Options(arch=Arch(arch), cdi=cdi))
    source = plan.driver.source if plan.driver else None
    functions = _functions(script)
    assert ("step cdi " in script) is cdi
    assert ("--cdi.enabled" in script) is cdi
    assert ("ensure_components" in functions) is bool(source and source.apt_components)
    assert ("driver_install_ubuntu_drivers" in functions) is bool(source and source.dkms_fallback)
    assert ("install_kernel_headers" in functions) is bool(source and (source.dkms or source.dkms_fallback))
    assert ("require_dkms_signing" in functions) is bool(source and (source.dkms or source.dkms_fallback))
    assert ("DKMS_BUILDS" in script) is bool(source and source.dkms_fallback)
    # Pruning again finds nothing more: every function left is called.
    assert prune.drop_unused_functions(script, "BAKEGEN_EMBEDDED_FILE_END") == script


def test_without_a_driver_no_driver_code_is_left() -> None:
    script = render_script("debian12", install_driver=False)
    assert not {"keep_foreign_driver", "ensure_dkms_modules", "install_kernel_guard"} & _functions(script)
    assert "DRIVER_" not in _code(script)


def test_the_user_data_copy_is_pruned_too() -> None:
    (user_data,) = render_files("ubuntu24.04", Format.CLOUD_INIT)
    assert "ensure_components" not in user_data.text
    assert "driver_install_ubuntu_drivers" in user_data.text
