"""The one pattern and length cap for every name or id a client can put in a path or a query: model
names, aliases, versions and job ids. Checked at the edge (path parameters) and again where a name
becomes a file or a Redis key (the model store, the job stores), so nothing outside the store is ever
read and no OS error reaches a client."""
from __future__ import annotations

import re

MODEL_NAME = r"^[a-z0-9][a-z0-9._-]{0,63}$"  # a directory name in the store: no '/', cannot start with '.'
ALIAS = r"^[A-Za-z0-9_-]{1,64}$"
JOB_ID = r"^[0-9a-f]{32}$"  # uuid4().hex
MAX_VERSION = 1_000_000_000
# a model reference in a query: name, name:version or name@alias (the schema's pattern: versions to
# 999,999,999, so that nothing it admits is refused)
MODEL_REF = r"^[a-z0-9][a-z0-9._-]{0,63}(:[1-9][0-9]{0,8}|@[A-Za-z0-9_-]{1,64})?$"

_MODEL_NAME, _ALIAS, _JOB_ID = re.compile(MODEL_NAME), re.compile(ALIAS), re.compile(JOB_ID)

MODEL_NAME_RULE = "1-64 characters of a-z, 0-9, '.', '_' and '-', starting with a letter or digit"
ALIAS_RULE = "1-64 characters of A-Z, a-z, 0-9, '_' and '-'"


def is_model_name(name: object) -> bool:
    """A directory name that cannot leave the store: it starts with a letter or digit and holds no '/',
    so it is never '.' or '..' (dots inside, 'a..b', are an ordinary file name and the schema's pattern)."""
    return isinstance(name, str) and bool(_MODEL_NAME.match(name))


def is_alias(alias: object) -> bool:
    return isinstance(alias, str) and bool(_ALIAS.match(alias))


def is_job_id(job_id: object) -> bool:
    return isinstance(job_id, str) and bool(_JOB_ID.match(job_id))


def is_version(version: object) -> bool:
    return isinstance(version, int) and not isinstance(version, bool) and 1 <= version <= MAX_VERSION
