from __future__ import annotations

import pytest

from tasks.naming import c_identifier, is_valid_name, unique_c_identifiers


@pytest.mark.parametrize("name, ident", [("sine", "sine"), ("conv-2d", "conv_2d"), ("0", "_0"),
                                         ("serving_default_dense_input:0", "serving_default_dense_input_0"),
                                         ("a.b/c", "a_b_c"), ("", "_")])
def test_c_identifier(name, ident):
    assert c_identifier(name) == ident


def test_clash_names_both():
    with pytest.raises(ValueError, match="'x:0' and 'x_0' both become the C identifier 'x_0'"):
        unique_c_identifiers(["x:0", "x_0"])


@pytest.mark.parametrize("name, ok", [("host", True), ("cortex-m4", True), ("a_1", True), ("..", False),
                                      ("a/b", False), ("_x", False), ("", False)])
def test_valid_names(name, ok):
    assert is_valid_name(name) is ok
