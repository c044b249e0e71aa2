#!/usr/bin/env bash
# Builds the rig's OTLP trace receiver: a small real OTLP/gRPC server (the generated
# collector service of go.opentelemetry.io/proto/otlp on google.golang.org/grpc) that writes
# every received span as one JSON line, so tests can read what the controller exported.
# A full OpenTelemetry Collector build takes far longer on two cores; this speaks the same
# protocol on the wire. The binary is cached outside the work tree, keyed by the versions
# below and a hash of the source, so later runs reuse it.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.sh
source "$here/versions.sh"

LVP_OTLP_PROTO_VERSION=v1.9.0
LVP_OTLP_GRPC_VERSION=v1.79.3

log() { printf '[rig-install] %s\n' "$*" >&2; }

receiver_source() {
  cat <<'GO'
// otlp-receiver: accepts OTLP/gRPC trace exports and appends each span to a JSON-lines file.
package main

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"sync"

	collectortrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	common "go.opentelemetry.io/proto/otlp/common/v1"
	"google.golang.org/grpc"
)

type span struct {
	TraceID      string         `json:"traceId"`
	SpanID       string         `json:"spanId"`
	ParentSpanID string         `json:"parentSpanId"`
	Name         string         `json:"name"`
	Kind         int32          `json:"kind"`
	StatusCode   int32          `json:"statusCode"`
	StatusMsg    string         `json:"statusMessage"`
	Attributes   map[string]any `json:"attributes"`
	Resource     map[string]any `json:"resource"`
	Scope        string         `json:"scope"`
	StartNanos   uint64         `json:"startTimeUnixNano"`
	EndNanos     uint64         `json:"endTimeUnixNano"`
}

type receiver struct {
	collectortrace.UnimplementedTraceServiceServer
	mu  sync.Mutex
	out *os.File
}

func value(v *common.AnyValue) any {
	switch x := v.GetValue().(type) {
	case *common.AnyValue_StringValue:
		return x.StringValue
	case *common.AnyValue_BoolValue:
		return x.BoolValue
	case *common.AnyValue_IntValue:
		return x.IntValue
	case *common.AnyValue_DoubleValue:
		return x.DoubleValue
	default:
		return fmt.Sprint(v)
	}
}

func attributes(kvs []*common.KeyValue) map[string]any {
	m := map[string]any{}
	for _, kv := range kvs {
		m[kv.GetKey()] = value(kv.GetValue())
	}
	return m
}

func (r *receiver) Export(_ context.Context, req *collectortrace.ExportTraceServiceRequest) (*collectortrace.ExportTraceServiceResponse, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	encoder := json.NewEncoder(r.out)
	for _, rs := range req.GetResourceSpans() {
		resource := attributes(rs.GetResource().GetAttributes())
		for _, ss := range rs.GetScopeSpans() {
			for _, s := range ss.GetSpans() {
				line := span{
					TraceID:      hex.EncodeToString(s.GetTraceId()),
					SpanID:       hex.EncodeToString(s.GetSpanId()),
					ParentSpanID: hex.EncodeToString(s.GetParentSpanId()),
					Name:         s.GetName(),
					Kind:         int32(s.GetKind()),
					StatusCode:   int32(s.GetStatus().GetCode()),
					StatusMsg:    s.GetStatus().GetMessage(),
					Attributes:   attributes(s.GetAttributes()),
					Resource:     resource,
					Scope:        ss.GetScope().GetName(),
					StartNanos:   s.GetStartTimeUnixNano(),
					EndNanos:     s.GetEndTimeUnixNano(),
				}
				if err := encoder.Encode(line); err != nil {
					return nil, err
				}
			}
		}
	}
	return &collectortrace.ExportTraceServiceResponse{}, r.out.Sync()
}

func main() {
	listen := flag.String("listen", "127.0.0.1:4317", "address to accept OTLP/gRPC on")
	outPath := flag.String("out", "spans.jsonl", "file that receives one JSON line per span")
	flag.Parse()
	out, err := os.OpenFile(*outPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		log.Fatal(err)
	}
	listener, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	server := grpc.NewServer()
	collectortrace.RegisterTraceServiceServer(server, &receiver{out: out})
	log.Printf("otlp-receiver listening on %s, writing %s", listener.Addr(), *outPath)
	log.Fatal(server.Serve(listener))
}
GO
}

main() {
  local cache source_hash version dest
  cache=$(lvp_tools_dir)
  source_hash=$(receiver_source | sha256sum | cut -c1-12)
  version="$LVP_OTLP_PROTO_VERSION-grpc$LVP_OTLP_GRPC_VERSION-$source_hash"
  dest="$cache/bin/otlp-receiver-$version"
  if [ -x "$dest/otlp-receiver" ]; then
    log "otlp-receiver $version: cached at $dest"
    echo "$version" >"$cache/bin/otlp-receiver.version"
    return 0
  fi
  mkdir -p "$cache/bin" "$cache/logs"
  local work build_log="$cache/logs/otlp-receiver-$version.log" start=$SECONDS
  work=$(mktemp -d "$cache/build-otlp-receiver.XXXXXX")
  log "otlp-receiver $version: building from the Go module proxy (log: $build_log)"
  if ! (
    cd "$work"
    export GOFLAGS=-mod=mod
    go mod init lvp.dev/rig/otlp-receiver
    receiver_source >main.go
    go get "go.opentelemetry.io/proto/otlp@$LVP_OTLP_PROTO_VERSION" "google.golang.org/grpc@$LVP_OTLP_GRPC_VERSION"
    go mod tidy
    CGO_ENABLED=0 go build -ldflags "-s -w" -o out/otlp-receiver .
  ) >"$build_log" 2>&1; then
    log "otlp-receiver $version: build FAILED after $((SECONDS - start))s, see $build_log"
    tail -n 30 "$build_log" >&2
    rm -rf "$work"
    return 1
  fi
  mkdir -p "$dest"
  mv "$work/out/otlp-receiver" "$dest/otlp-receiver.tmp" && mv "$dest/otlp-receiver.tmp" "$dest/otlp-receiver"
  rm -rf "$work"
  # Lets test/rig/tools.ts find the build of this script's exact source.
  echo "$version" >"$cache/bin/otlp-receiver.version"
  log "otlp-receiver $version: cold build done in $((SECONDS - start))s"
}

main "$@"
