// Command etcd-go-bench drives etcd through its own Go client (clientv3 over gRPC) with N
// concurrent clients sharing M connections, for a bounded time, and prints one JSON document:
// the successful operations, failures by kind, the measured window, the throughput and the
// latencies (a summary plus counts per latency bucket, bucketed as Concord's Python bench
// buckets them: three significant digits). `concord bench compare --systems etcd-go` builds
// and runs it (src/concord/bench/etcd_go.py); keys and values are the Python bench's.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math/bits"
	"math/rand"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/clientv3"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

const (
	maxClients      = 4096
	maxKeySpace     = 1_000_000
	maxValueBytes   = 1 << 20
	maxDurationS    = 600.0
	maxWarmupS      = 60.0
	maxTimeoutS     = 60.0
	keyPrefix       = "k"
	valueAlphabet   = "abcdefghijklmnopqrstuvwxyz0123456789"
	dialTimeout     = 10 * time.Second
	prefillWorkers  = 64
	prefillAttempts = 5
	prefillBudget   = 120 * time.Second
	errorBackoff    = 10 * time.Millisecond // after a failure to serve, as the Python bench
	finishGrace     = 30 * time.Second
	maxDetailChars  = 60
	keyNotFound     = "key_not_found" // the Python bench's name for a get of a missing key
	// Latencies in µs are kept exact below 2048 and rounded down to 11 significant bits above
	// (0.05 % steps): the lowest-equivalent values of an HDR histogram at three significant
	// digits, so the Python side re-records them without changing any percentile.
	exactBelowUs   = 2048
	significantBit = 11
)

type config struct {
	endpoints   []string
	clients     int
	conns       int
	op          string
	keySize     int
	valueSize   int
	keySpace    int
	duration    time.Duration
	warmup      time.Duration
	timeout     time.Duration
	seed        int64
	durationS   float64
	warmupS     float64
	timeoutS    float64
	endpointArg string
}

func parseConfig(args []string) (*config, error) {
	c := &config{}
	flags := flag.NewFlagSet("etcd-go-bench", flag.ContinueOnError)
	flags.StringVar(&c.endpointArg, "endpoints", "127.0.0.1:2379", "comma-separated etcd client URLs")
	flags.IntVar(&c.clients, "clients", 1, "concurrent clients")
	flags.IntVar(&c.conns, "conns", 1, "gRPC connections the clients share, round robin")
	flags.StringVar(&c.op, "op", "put", "put, or get (a linearizable range of one key)")
	flags.IntVar(&c.keySize, "key-size", 8, "bytes")
	flags.IntVar(&c.valueSize, "val-size", 256, "bytes")
	flags.IntVar(&c.keySpace, "key-space", 10000, "distinct keys")
	flags.Float64Var(&c.durationS, "duration", 10, "measured seconds")
	flags.Float64Var(&c.warmupS, "warmup", 1, "unrecorded seconds first")
	flags.Float64Var(&c.timeoutS, "timeout", 10, "per request, seconds")
	flags.Int64Var(&c.seed, "seed", 1, "seed of the key choice")
	if err := flags.Parse(args); err != nil {
		return nil, err
	}
	if flags.NArg() != 0 {
		return nil, fmt.Errorf("unexpected arguments: %v", flags.Args())
	}
	for _, e := range strings.Split(c.endpointArg, ",") {
		if e = strings.TrimSpace(e); e != "" {
			c.endpoints = append(c.endpoints, e)
		}
	}
	digits := len(strconv.Itoa(c.keySpace - 1))
	checks := []struct {
		ok      bool
		message string
	}{
		{len(c.endpoints) > 0, "at least one endpoint is needed"},
		{c.op == "put" || c.op == "get", "op must be put or get"},
		{1 <= c.clients && c.clients <= maxClients, fmt.Sprintf("clients must be 1..%d", maxClients)},
		{1 <= c.conns && c.conns <= c.clients, "conns must be 1..clients"},
		{1 <= c.keySpace && c.keySpace <= maxKeySpace, fmt.Sprintf("key space must be 1..%d", maxKeySpace)},
		{len(keyPrefix)+digits <= c.keySize && c.keySize <= 1024,
			fmt.Sprintf("keys must be %d..1024 bytes for %d keys", len(keyPrefix)+digits, c.keySpace)},
		{1 <= c.valueSize && c.valueSize <= maxValueBytes, fmt.Sprintf("values must be 1..%d bytes", maxValueBytes)},
		{0 < c.durationS && c.durationS <= maxDurationS, fmt.Sprintf("duration must be in (0, %g] s", maxDurationS)},
		{0 <= c.warmupS && c.warmupS <= maxWarmupS, fmt.Sprintf("warm-up must be in [0, %g] s", maxWarmupS)},
		{0 < c.timeoutS && c.timeoutS <= maxTimeoutS, fmt.Sprintf("timeout must be in (0, %g] s", maxTimeoutS)},
	}
	for _, check := range checks {
		if !check.ok {
			return nil, errors.New(check.message)
		}
	}
	c.duration = seconds(c.durationS)
	c.warmup = seconds(c.warmupS)
	c.timeout = seconds(c.timeoutS)
	return c, nil
}

func seconds(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }

func (c *config) key(index int) string {
	digits := strconv.Itoa(index)
	return keyPrefix + strings.Repeat("0", c.keySize-len(keyPrefix)-len(digits)) + digits
}

func (c *config) value() string {
	return strings.Repeat(valueAlphabet, c.valueSize/len(valueAlphabet)+1)[:c.valueSize]
}

// bucketUs is the lowest latency (µs) that an HDR histogram at three significant digits
// counts together with us.
func bucketUs(us int64) int64 {
	if us < exactBelowUs {
		return us
	}
	shift := bits.Len64(uint64(us)) - significantBit
	return us >> shift << shift
}

// stats is what one client measured; merged at the end, so clients share no lock.
type stats struct {
	ok             int64
	sumUs          int64
	maxUs          int64
	buckets        map[int64]int64
	errors         map[string]int64
	lastCompletion time.Time
}

func newStats() *stats {
	return &stats{buckets: map[int64]int64{}, errors: map[string]int64{}}
}

func (s *stats) record(latency time.Duration) {
	us := latency.Microseconds()
	if us < 1 {
		us = 1
	}
	s.ok++
	s.sumUs += us
	if us > s.maxUs {
		s.maxUs = us
	}
	s.buckets[bucketUs(us)]++
}

func (s *stats) add(o *stats) {
	s.ok += o.ok
	s.sumUs += o.sumUs
	if o.maxUs > s.maxUs {
		s.maxUs = o.maxUs
	}
	for b, n := range o.buckets {
		s.buckets[b] += n
	}
	for kind, n := range o.errors {
		s.errors[kind] += n
	}
	if o.lastCompletion.After(s.lastCompletion) {
		s.lastCompletion = o.lastCompletion
	}
}

// errorKind names a failure the way the Python bench names them: "timeout", or the gRPC
// code with the server's message.
func errorKind(ctx context.Context, err error) string {
	if errors.Is(err, context.DeadlineExceeded) || ctx.Err() == context.DeadlineExceeded {
		return "timeout"
	}
	if s, ok := status.FromError(err); ok {
		if s.Code() == codes.DeadlineExceeded {
			return "timeout"
		}
		return "grpc " + s.Code().String() + " " + truncate(s.Message())
	}
	return "client " + truncate(err.Error())
}

func truncate(text string) string {
	if len(text) > maxDetailChars {
		return text[:maxDetailChars]
	}
	return text
}

type bench struct {
	cfg   *config
	conns []*clientv3.Client
	value string
}

// do performs one operation on key: "" on success, else the error kind.
func (b *bench) do(cli *clientv3.Client, key string) string {
	ctx, cancel := context.WithTimeout(context.Background(), b.cfg.timeout)
	defer cancel()
	if b.cfg.op == "put" {
		if _, err := cli.Put(ctx, key, b.value); err != nil {
			return errorKind(ctx, err)
		}
		return ""
	}
	resp, err := cli.Get(ctx, key) // linearizable: clientv3's default
	if err != nil {
		return errorKind(ctx, err)
	}
	if resp.Count == 0 {
		return keyNotFound
	}
	return ""
}

// prefill writes every key once, so gets find them; bounded by attempts and by time.
func (b *bench) prefill() error {
	deadline := time.Now().Add(prefillBudget)
	var next int64 = -1
	var firstErr error
	var once sync.Once
	var wg sync.WaitGroup
	for w := 0; w < prefillWorkers; w++ {
		wg.Add(1)
		go func(cli *clientv3.Client) {
			defer wg.Done()
			for {
				index := int(atomic.AddInt64(&next, 1))
				if index >= b.cfg.keySpace || time.Now().After(deadline) {
					return
				}
				key := b.cfg.key(index)
				var err error
				for attempt := 0; attempt < prefillAttempts; attempt++ {
					ctx, cancel := context.WithTimeout(context.Background(), b.cfg.timeout)
					_, err = cli.Put(ctx, key, b.value)
					cancel()
					if err == nil {
						break
					}
					time.Sleep(errorBackoff * 10 * time.Duration(attempt+1))
				}
				if err != nil {
					once.Do(func() { firstErr = fmt.Errorf("prefill of %q failed: %w", key, err) })
					return
				}
			}
		}(b.conns[w%len(b.conns)])
	}
	wg.Wait()
	if firstErr == nil && time.Now().After(deadline) {
		firstErr = fmt.Errorf("prefill took more than %s", prefillBudget)
	}
	return firstErr
}

// run drives the clients: operations starting during the warm-up are sent but not recorded;
// a client stops once the measured duration is over.
func (b *bench) run() (*stats, time.Time) {
	start := time.Now()
	measureStart := start.Add(b.cfg.warmup)
	deadline := measureStart.Add(b.cfg.duration)
	results := make([]*stats, b.cfg.clients)
	var wg sync.WaitGroup
	for id := 0; id < b.cfg.clients; id++ {
		results[id] = newStats()
		wg.Add(1)
		go func(id int, mine *stats) {
			defer wg.Done()
			cli := b.conns[id%len(b.conns)]
			rng := rand.New(rand.NewSource(b.cfg.seed*maxClients + int64(id)))
			for {
				began := time.Now()
				if !began.Before(deadline) {
					return
				}
				measured := !began.Before(measureStart)
				kind := b.do(cli, b.cfg.key(rng.Intn(b.cfg.keySpace)))
				done := time.Now()
				if measured {
					mine.lastCompletion = done
					if kind == "" {
						mine.record(done.Sub(began))
					} else {
						mine.errors[kind]++
					}
				}
				if kind != "" && kind != keyNotFound {
					time.Sleep(errorBackoff)
				}
			}
		}(id, results[id])
	}
	wg.Wait()
	total := newStats()
	for _, s := range results {
		total.add(s)
	}
	return total, measureStart
}

type report struct {
	Op                 string             `json:"op"`
	Endpoints          []string           `json:"endpoints"`
	Clients            int                `json:"clients"`
	Conns              int                `json:"conns"`
	KeySize            int                `json:"key_size"`
	ValueSize          int                `json:"val_size"`
	KeySpace           int                `json:"key_space"`
	DurationS          float64            `json:"duration_s"`
	WarmupS            float64            `json:"warmup_s"`
	TimeoutS           float64            `json:"timeout_s"`
	Ok                 int64              `json:"ok"`
	Errors             map[string]int64   `json:"errors"`
	ElapsedS           float64            `json:"elapsed_s"`
	ThroughputOpsPerS  float64            `json:"throughput_ops_per_s"`
	LatencyMs          map[string]float64 `json:"latency_ms"`
	MaxUs              int64              `json:"max_us"`
	LatencyUsHistogram [][2]int64         `json:"latency_us_histogram"`
}

// percentileUs is the lowest latency of the bucket holding the value of rank p % of total
// (rounded half up, at least 1: the rank an HDR histogram takes).
func percentileUs(histogram [][2]int64, total int64, p float64) int64 {
	rank := int64(p/100*float64(total) + 0.5)
	if rank < 1 {
		rank = 1
	}
	var seen int64
	for _, pair := range histogram {
		seen += pair[1]
		if seen >= rank {
			return pair[0]
		}
	}
	return 0
}

func (b *bench) report(total *stats, measureStart time.Time) report {
	histogram := make([][2]int64, 0, len(total.buckets))
	for us, n := range total.buckets {
		histogram = append(histogram, [2]int64{us, n})
	}
	sort.Slice(histogram, func(i, j int) bool { return histogram[i][0] < histogram[j][0] })
	elapsed := 0.0
	if total.lastCompletion.After(measureStart) {
		elapsed = total.lastCompletion.Sub(measureStart).Seconds()
	}
	throughput, mean := 0.0, 0.0
	if elapsed > 0 {
		throughput = float64(total.ok) / elapsed
	}
	latency := map[string]float64{}
	if total.ok > 0 {
		mean = float64(total.sumUs) / float64(total.ok) / 1000
		for _, p := range []float64{50, 90, 99} {
			latency["p"+strconv.Itoa(int(p))] = float64(percentileUs(histogram, total.ok, p)) / 1000
		}
	}
	latency["mean"] = mean
	latency["max"] = float64(total.maxUs) / 1000
	return report{
		Op: b.cfg.op, Endpoints: b.cfg.endpoints, Clients: b.cfg.clients, Conns: b.cfg.conns,
		KeySize: b.cfg.keySize, ValueSize: b.cfg.valueSize, KeySpace: b.cfg.keySpace,
		DurationS: b.cfg.durationS, WarmupS: b.cfg.warmupS, TimeoutS: b.cfg.timeoutS,
		Ok: total.ok, Errors: total.errors, ElapsedS: elapsed, ThroughputOpsPerS: throughput,
		LatencyMs: latency, MaxUs: total.maxUs, LatencyUsHistogram: histogram,
	}
}

func fail(code int, format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "etcd-go-bench: "+format+"\n", args...)
	os.Exit(code)
}

func main() {
	cfg, err := parseConfig(os.Args[1:])
	if err != nil {
		fail(2, "%v", err)
	}
	// the whole run is bounded even if a request or the prefill ignored its deadline
	limit := prefillBudget + cfg.warmup + cfg.duration + cfg.timeout + finishGrace
	time.AfterFunc(limit, func() { fail(3, "did not finish within %s", limit) })

	logs := zap.NewProductionConfig()
	logs.Level = zap.NewAtomicLevelAt(zap.ErrorLevel)
	b := &bench{cfg: cfg, value: cfg.value()}
	for i := 0; i < cfg.conns; i++ {
		cli, err := clientv3.New(clientv3.Config{
			Endpoints:   []string{cfg.endpoints[i%len(cfg.endpoints)]},
			DialTimeout: dialTimeout,
			LogConfig:   &logs,
		})
		if err != nil {
			fail(1, "connecting to %s: %v", cfg.endpoints[i%len(cfg.endpoints)], err)
		}
		defer cli.Close()
		b.conns = append(b.conns, cli)
	}
	if cfg.op == "get" {
		if err := b.prefill(); err != nil {
			fail(1, "%v", err)
		}
	}
	total, measureStart := b.run()
	out := json.NewEncoder(os.Stdout)
	if err := out.Encode(b.report(total, measureStart)); err != nil {
		fail(1, "writing the result: %v", err)
	}
}
