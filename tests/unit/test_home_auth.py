"""The home's Ray token: created once inside the home, refused clearly when the home is a file."""

from __future__ import annotations

import pytest

from marquee.home import auth_env


def test_the_token_is_made_once_and_reused(tmp_path):
    first = auth_env(tmp_path / "home")
    token = open(first["RAY_AUTH_TOKEN_PATH"]).read()
    assert len(token) == 64 and auth_env(tmp_path / "home") == first
    assert open(first["RAY_AUTH_TOKEN_PATH"]).read() == token


def test_a_home_that_is_a_file_is_refused_naming_it(tmp_path):
    home = tmp_path / "home"
    home.write_text("not a directory")
    with pytest.raises(NotADirectoryError, match=f"MARQUEE_HOME {home} is a file"):
        auth_env(home)
