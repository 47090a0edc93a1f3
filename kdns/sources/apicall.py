"""GET requests to the Kubernetes API through the official client's generic request path.

The client's typed API classes (`CoreV1Api`, `DiscoveryV1Api`) import, with their type
annotations, every model their methods name: `CoreV1Api` alone loads 250 pydantic models, 22 MB of
every kdns process's memory (measured: 42 MB RSS after `import kubernetes`, 64 MB after importing
`CoreV1Api`). kdns reads raw JSON (`_preload_content=False`) and never builds those models, so it
asks the same `ApiClient` to serialize and send the request itself (`param_serialize`, `call_api`:
the calls every generated method ends in, with the same authentication, TLS, proxy and retry
settings) and checks the status as the generated methods do. Custom resources (which no typed
class covers) are read the same way.
"""

from __future__ import annotations

from typing import Any

from kubernetes.client import ApiClient, ApiException

#: The client's keyword names (as the generated list functions spell them) -> query parameters.
_QUERY = {
    "label_selector": "labelSelector",
    "field_selector": "fieldSelector",
    "limit": "limit",
    "_continue": "continue",
    "resource_version": "resourceVersion",
    "resource_version_match": "resourceVersionMatch",
    "watch": "watch",
    "allow_watch_bookmarks": "allowWatchBookmarks",
    "timeout_seconds": "timeoutSeconds",
}


def collection_path(group_version: str, plural: str, namespace: str | None = None) -> str:
    """The path of a collection: `/api/v1/services`, `/apis/discovery.k8s.io/v1/namespaces/ns/
    endpointslices`; `group_version` is "v1" for the core group, else "group/version"."""
    prefix = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
    if namespace is not None:
        return f"{prefix}/namespaces/{namespace}/{plural}"
    return f"{prefix}/{plural}"


def get(api_client: ApiClient, path: str, *, request_timeout: Any = None, **params: Any) -> Any:
    """GET `path` and return the urllib3 response, unread (the caller streams or reads it and
    releases the connection). `params` take the generated functions' keyword names
    (`label_selector`, `_continue`, `watch`...); None values are left out. A status outside 2xx
    raises the client's `ApiException`, as the generated functions do."""
    query = []
    for key, value in params.items():
        if value is None:
            continue
        name = _QUERY.get(key)
        if name is None:
            raise TypeError(f"unknown query parameter {key!r}")
        query.append((name, value))
    request = api_client.param_serialize(
        method="GET",
        resource_path=path,
        query_params=query,
        header_params={"Accept": "application/json"},
        auth_settings=["BearerToken"],
    )
    response = api_client.call_api(*request, _request_timeout=request_timeout)
    if not 200 <= response.status <= 299:
        response.read()  # type: ignore[no-untyped-call]
        raise ApiException.from_response(http_resp=response, body=None, data=None)
    return response.response
