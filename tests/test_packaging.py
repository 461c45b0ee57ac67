"""The Python version the package declares agrees with what it needs and what the README and classifiers say."""

import ast
import configparser
import re
import sys
import tomllib

from packaging.specifiers import SpecifierSet
from packaging.version import Version

from helpers import ROOT


def metadata() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(ROOT / 'setup.cfg')
    return parser


def minimum_python() -> Version:
    specifiers = SpecifierSet(metadata()['options']['python_requires'])
    lower = [Version(spec.version) for spec in specifiers if spec.operator == '>=']
    assert len(lower) == 1, f'python_requires should give one minimum: {specifiers}'
    return lower[0]


# The typing names of recent Pythons, by the version that added them: an import of one below it fails at start-up.
NEWER_TYPING = {
    'Self': '3.11',
    'LiteralString': '3.11',
    'Never': '3.11',
    'assert_never': '3.11',
    'assert_type': '3.11',
    'reveal_type': '3.11',
    'TypeVarTuple': '3.11',
    'Unpack': '3.11',
    'Required': '3.11',
    'NotRequired': '3.11',
    'dataclass_transform': '3.11',
    'override': '3.12',
    'TypeAliasType': '3.12',
    'get_protocol_members': '3.13',
    'is_protocol': '3.13',
    'ReadOnly': '3.13',
    'TypeIs': '3.13',
    'NoDefault': '3.13',
}


def project_sources() -> list:
    return [ROOT / name for name in ('cli.py', 'models.py', 'scheduler.py')] + sorted((ROOT / 'rqjobs').rglob('*.py'))


def test_the_tests_run_on_a_declared_python():
    running = Version(f'{sys.version_info.major}.{sys.version_info.minor}')
    assert running in SpecifierSet(metadata()['options']['python_requires'])


def test_every_module_parses_and_imports_on_the_declared_minimum():
    minimum = minimum_python()
    for path in project_sources():
        tree = ast.parse(path.read_text(), filename=str(path), feature_version=(minimum.major, minimum.minor))
        for node in ast.walk(tree):
            names = (
                [alias.name for alias in node.names]
                if isinstance(node, ast.ImportFrom) and node.module == 'typing'
                else [node.attr]
                if isinstance(node, ast.Attribute) and getattr(node.value, 'id', None) == 'typing'
                else []
            )
            for name in names:
                assert Version(NEWER_TYPING.get(name, '3.0')) <= minimum, (
                    f'{path.name}:{node.lineno} uses typing.{name} (Python {NEWER_TYPING[name]}+), '
                    f'but setup.cfg declares {minimum}'
                )


def test_classifiers_readme_and_linter_agree_with_python_requires():
    minimum = minimum_python()
    versions = [
        Version(line.rsplit('::', 1)[1])
        for line in metadata()['metadata']['classifiers'].splitlines()
        if re.fullmatch(r'Programming Language :: Python :: 3\.\d+', line.strip())
    ]
    assert versions and min(versions) == minimum
    readme = (ROOT / 'README.md').read_text()
    assert re.findall(r'Python (3\.\d+)\+', readme) == [str(minimum)]
    ruff = tomllib.loads((ROOT / 'pyproject.toml').read_text())['tool']['ruff']
    assert ruff['target-version'] == f'py{minimum.major}{minimum.minor}'
