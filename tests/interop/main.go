// bacalhau-interop calls Bacalhau v1.9.3's own functions so tests can check our specs and archives
// against Bacalhau itself. One command per call; JSON out; a non-zero exit with the error on stderr.
package main

import (
	"encoding/json"
	"fmt"
	"os"

	"github.com/bacalhau-project/bacalhau/cmd/util/opts"
	"github.com/bacalhau-project/bacalhau/pkg/lib/gzip"
	"github.com/bacalhau-project/bacalhau/pkg/models"
	s3publisher "github.com/bacalhau-project/bacalhau/pkg/publisher/s3"
	s3helper "github.com/bacalhau-project/bacalhau/pkg/s3"
	"sigs.k8s.io/yaml"
)

func emit(v any) {
	out, err := json.Marshal(v)
	if err != nil {
		fail(err)
	}
	fmt.Println(string(out))
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, err.Error())
	os.Exit(1)
}

func spec(arg string) *models.SpecConfig {
	var s models.SpecConfig
	if err := json.Unmarshal([]byte(arg), &s); err != nil {
		fail(err)
	}
	return &s
}

func main() {
	if len(os.Args) < 3 {
		fail(fmt.Errorf("usage: bacalhau-interop COMMAND ARG..."))
	}
	args := os.Args[2:]
	switch os.Args[1] {
	case "decode-source": // JSON SpecConfig -> s3 SourceSpec
		decoded, err := s3helper.DecodeSourceSpec(spec(args[0]))
		if err != nil {
			fail(err)
		}
		emit(decoded)
	case "decode-publisher": // JSON SpecConfig -> s3 PublisherSpec
		decoded, err := s3helper.DecodePublisherSpec(spec(args[0]))
		if err != nil {
			fail(err)
		}
		emit(decoded)
	case "parse-key": // KEY JOB EXECUTION NODE ARCHIVE(true|false)
		execution := &models.Execution{ID: args[2], JobID: args[1], NodeID: args[3]}
		emit(s3publisher.ParsePublishedKey(args[0], execution, args[4] == "true"))
	case "publisher-opt": // Bacalhau's CLI -p value
		opt := opts.NewPublisherSpecConfigOpt()
		if err := opt.Set(args[0]); err != nil {
			fail(err)
		}
		emit(opt.Value())
	case "job": // a job spec file (YAML or JSON) -> the tasks' Publisher, InputSources, ResultPaths
		data, err := os.ReadFile(args[0])
		if err != nil {
			fail(err)
		}
		var job models.Job
		if err := yaml.Unmarshal(data, &job); err != nil {
			fail(err)
		}
		type taskIO struct {
			Name         string
			Publisher    *models.SpecConfig
			InputSources []*models.InputSource
			ResultPaths  []*models.ResultPath
		}
		var out []taskIO
		for _, task := range job.Tasks {
			out = append(out, taskIO{task.Name, task.Publisher, task.InputSources, task.ResultPaths})
		}
		emit(out)
	case "compress": // SRC_DIR TARGET_FILE, Bacalhau's result archive writer
		target, err := os.Create(args[1])
		if err != nil {
			fail(err)
		}
		if err := gzip.Compress(args[0], target); err != nil {
			fail(err)
		}
		if err := target.Close(); err != nil {
			fail(err)
		}
		emit("ok")
	case "decompress": // TAR_GZ DEST_DIR, Bacalhau's result archive reader
		if err := gzip.Decompress(args[0], args[1]); err != nil {
			fail(err)
		}
		emit("ok")
	default:
		fail(fmt.Errorf("unknown command %q", os.Args[1]))
	}
}
