// Command metricnames reads PromQL expressions, one JSON string per line on standard input, and
// prints for each one a JSON object: the metric names its selectors name, or the parse error.
// Prometheus' own parser decides, so a query that Prometheus would refuse is refused here too.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"sort"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql/parser"
)

type result struct {
	Expr    string   `json:"expr"`
	Metrics []string `json:"metrics"`
	Error   string   `json:"error,omitempty"`
}

// names lists the metric names an expression selects; a selector without a literal name (a
// regular expression on __name__) is reported as "" so the caller can refuse it.
func names(expr parser.Expr) []string {
	seen := map[string]bool{}
	parser.Inspect(expr, func(node parser.Node, _ []parser.Node) error {
		if vs, ok := node.(*parser.VectorSelector); ok {
			name := vs.Name
			if name == "" {
				for _, m := range vs.LabelMatchers {
					if m.Name == labels.MetricName && m.Type == labels.MatchEqual {
						name = m.Value
					}
				}
			}
			seen[name] = true
		}
		return nil
	})
	out := make([]string, 0, len(seen))
	for n := range seen {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

func main() {
	p := parser.NewParser(parser.Options{})
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 1<<20)
	enc := json.NewEncoder(os.Stdout)
	status := 0
	for in.Scan() {
		var text string
		if err := json.Unmarshal(in.Bytes(), &text); err != nil {
			fmt.Fprintf(os.Stderr, "metricnames: not a JSON string: %v\n", err)
			os.Exit(2)
		}
		r := result{Expr: text, Metrics: []string{}}
		expr, err := p.ParseExpr(text)
		if err != nil {
			r.Error = err.Error()
			status = 1
		} else {
			r.Metrics = names(expr)
		}
		if err := enc.Encode(r); err != nil {
			fmt.Fprintf(os.Stderr, "metricnames: %v\n", err)
			os.Exit(2)
		}
	}
	if err := in.Err(); err != nil {
		fmt.Fprintf(os.Stderr, "metricnames: %v\n", err)
		os.Exit(2)
	}
	os.Exit(status)
}
