"""`--namespace` and `--label-selector` as a rule: the label-selector syntax, parsed as the API
server parses it (k8s.io/apimachinery/pkg/labels), and which objects a scope admits."""

from __future__ import annotations

import pytest

from kdns.config import Config, ConfigError
from kdns.sources.scope import Scope, ScopeError, parse_selector
from kdns.state.model import EndpointSet, Namespace, Service


@pytest.mark.parametrize(
    ("text", "labels", "expected"),
    [
        ("", {}, True),
        ("app=web", {"app": "web"}, True),
        ("app=web", {"app": "db"}, False),
        ("app=web", {}, False),
        ("app==web", {"app": "web"}, True),
        ("app!=web", {"app": "db"}, True),
        ("app!=web", {}, True),  # absent: not equal, as in Kubernetes
        ("app!=web", {"app": "web"}, False),
        ("tier in (front, back)", {"tier": "back"}, True),
        ("tier in (front,back)", {"tier": "db"}, False),
        ("tier in (front,back)", {}, False),
        ("tier notin (front,back)", {"tier": "db"}, True),
        ("tier notin (front,back)", {}, True),
        ("tier notin (front,back)", {"tier": "front"}, False),
        ("dns", {"dns": ""}, True),
        ("dns", {}, False),
        ("!dns", {}, True),
        ("!dns", {"dns": "yes"}, False),
        ("app=", {"app": ""}, True),
        ("app=", {"app": "x"}, False),
        ("tier in ()", {"tier": ""}, True),
        ("tier in (a,)", {"tier": ""}, True),
        ("gen>2", {"gen": "3"}, True),
        ("gen>2", {"gen": "2"}, False),
        ("gen>2", {"gen": "x"}, False),
        ("gen>2", {}, False),
        ("gen<2", {"gen": "1"}, True),
        ("gen<2", {"gen": "1_0"}, False),  # strconv.ParseInt has no underscores
        ("example.com/team=a,app.kubernetes.io/name=b", {"example.com/team": "a"}, False),
        (
            " example.com/team = a , app.kubernetes.io/name in (b) ",
            {"example.com/team": "a", "app.kubernetes.io/name": "b"},
            True,
        ),
        ("in=notin", {"in": "notin"}, True),  # keywords are words where a key or value goes
        ("app=web,!canary,tier notin (db)", {"app": "web", "tier": "front"}, True),
        ("app=web,!canary,tier notin (db)", {"app": "web", "canary": "1"}, False),
    ],
)
def test_selector_matches_as_kubernetes_does(
    text: str, labels: dict[str, str], expected: bool
) -> None:
    assert parse_selector(text).matches(labels) is expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("app in web", "found 'web', expected: '('"),
        ("app in (web", "expected: ',' or ')'"),
        ("app in (a b)", "found 'b', expected: ',' or ')'"),
        ("app web", "found 'web', expected: =, !=, ==, in, notin, >, < after key 'app'"),
        ("app=web=x", "found '=', expected: ',' or 'end of string'"),
        ("app=web,", "expected: identifier after ','"),
        (",app", "found ',', expected: !, identifier, or 'end of string'"),
        ("!", "expected: identifier"),
        ("app=(", "found '(', expected: identifier"),
        ("-app=web", "invalid label key '-app'"),
        ("Example.com/app=web", "invalid label key 'Example.com/app'"),
        ("a/b/c=web", "invalid label key 'a/b/c'"),
        ("/app=web", "invalid label key '/app'"),
        ("app=-web", "invalid value '-web' for label 'app'"),
        ("app=" + "x" * 64, "invalid value"),
        ("gen>two", "for '>', the value must be an integer, not 'two'"),
    ],
)
def test_malformed_selectors_are_one_line_errors(text: str, message: str) -> None:
    with pytest.raises(ScopeError) as err:
        parse_selector(text)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_scope_of_the_flags() -> None:
    assert Scope.of().everything
    assert Scope.of([], "  ").everything  # an empty selector selects everything
    scope = Scope.of(["shop", "web", "shop"], "app=web")
    assert scope.namespaces == frozenset({"shop", "web"})
    assert scope.describe() == "namespaces shop, web; services matching app=web"
    assert Scope.of([], "app=web").describe() == "all namespaces; services matching app=web"
    with pytest.raises(ScopeError, match=r"^bad --label-selector 'app in web': found 'web'"):
        Scope.of([], "app in web")
    with pytest.raises(ScopeError, match=r"^bad --namespace 'Shop': a namespace name is"):
        Scope.of(["Shop"])
    # The server and the one-shot commands build it from their Config, as a ConfigError.
    with pytest.raises(ConfigError, match="bad --label-selector"):
        Config(label_selector="!").scope()
    assert Config(namespaces=["shop"]).scope() == Scope(frozenset({"shop"}))


def test_scope_admits_by_namespace_and_service_labels() -> None:
    scope = Scope.of(["shop"], "dns=on")
    svc = Service("shop", "cart")
    assert scope.admits(svc, {"dns": "on"})
    assert not scope.admits(svc, {"dns": "off"})
    assert not scope.admits(svc)
    assert not scope.admits(Service("default", "cart"), {"dns": "on"})
    assert scope.admits(Namespace("shop")) and not scope.admits(Namespace("default"))
    # The selector reads Services only: endpoints stay, and join only a selected service.
    assert scope.admits(EndpointSet("EndpointSlice", "shop", "cart-1", "cart"))
    assert not scope.admits(EndpointSet("EndpointSlice", "default", "cart-1", "cart"))
    assert Scope().admits(Service("default", "cart"))
