"""Where objects come from: the cluster watch and the zones/ manifest files.

Both sources turn Kubernetes JSON into the trimmed records of `kdns.state.model` (`trim`) and
write them into the store through a `Sink`. The cluster: `cluster` (one reflector per kind, how
to reach the API) and `reflector` (list, watch, relist). The files: `files` (the directories,
watched by inotify or polling), `writers` (whether a file's writer is done with it),
`manifests` (one file parsed, with positions for errors), `pods` (endpoints from Pods and
selectors) and `allocate` (ClusterIPs for Services that set none).
"""
