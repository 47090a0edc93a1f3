// CoreDNS with the external plugin github.com/coredns/multicluster, built the way CoreDNS
// documents for an external plugin: every stock plugin, plus multicluster in the plugin chain
// just after kubernetes, where the plugin's README puts it in plugins.cfg (each answers only its
// own zones, so the order matters only for a zone named by both). Versions pinned in go.mod.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	_ "github.com/coredns/coredns/core/plugin"
	"github.com/coredns/coredns/coremain"
	_ "github.com/coredns/multicluster"
)

func init() {
	for i, name := range dnsserver.Directives {
		if name == "kubernetes" {
			rest := append([]string{"multicluster"}, dnsserver.Directives[i+1:]...)
			dnsserver.Directives = append(dnsserver.Directives[:i+1], rest...)
			return
		}
	}
	panic("coredns-multicluster: no kubernetes directive to insert multicluster after")
}

func main() {
	coremain.Run()
}
