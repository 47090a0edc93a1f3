"""End-to-end tests: kdns against a real kube-apiserver, beside a real CoreDNS."""
