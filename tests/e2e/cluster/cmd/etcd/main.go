// etcd, at the version k8s.io/kubernetes is built with (go.etcd.io/etcd/server/v3 in go.mod).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
