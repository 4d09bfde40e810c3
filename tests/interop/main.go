// bacalhau-interop calls Bacalhau v1.9.3's own functions so tests can check our specs and archives
// against Bacalhau itself. One command per call; JSON out; a non-zero exit with the error on stderr.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"strings"
	"time"
	"unicode"

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
	case "decode-presigned": // JSON SpecConfig -> s3PreSigned spec as decoded, and Bacalhau's ToMap of it
		decoded, err := s3helper.DecodePreSignedResultSpec(spec(args[0]))
		if err != nil {
			fail(err)
		}
		emit(map[string]any{"Decoded": decoded, "ToMap": decoded.ToMap()})
	case "partition": // - ; stdin: JSON [{Keys, Params, Count, Index}] -> s3.PartitionObjects of each
		partitionCases()
	case "regexp": // - ; stdin: JSON [{Pattern, Inputs}] -> regexp.Compile error, or FindStringSubmatch of each
		regexpCases()
	case "date": // - ; stdin: JSON [{Layout, Keys}] -> DateFormat validation, and partitionByDate's key of each
		dateCases()
	case "fold-orbits": // - ; unicode.SimpleFold's orbits of more than one rune
		foldOrbits()
	default:
		fail(fmt.Errorf("unknown command %q", os.Args[1]))
	}
}

// readCases decodes stdin's JSON into cases (the batch commands read many cases in one call).
func readCases(cases any) {
	if err := json.NewDecoder(os.Stdin).Decode(cases); err != nil {
		fail(err)
	}
}

// partitionCases runs Bacalhau's own s3.PartitionObjects on each case, as pkg/storage/s3 calls it: the
// Params decoded by DecodeSourceSpec (its error kept), keys ending in "/" marked IsDir as explodeKey marks them.
func partitionCases() {
	var cases []struct {
		Keys   []string
		Params map[string]any
		Count  int
		Index  int
	}
	readCases(&cases)
	out := make([]map[string]any, 0, len(cases))
	for _, c := range cases {
		source, decodeErr := s3helper.DecodeSourceSpec(&models.SpecConfig{Type: models.StorageSourceS3, Params: c.Params})
		row := map[string]any{"ToMap": source.ToMap()}
		if decodeErr != nil {
			row["DecodeError"] = decodeErr.Error()
		}
		objects := make([]s3helper.ObjectSummary, 0, len(c.Keys))
		for _, key := range c.Keys {
			objects = append(objects, s3helper.ObjectSummary{Key: &key, IsDir: strings.HasSuffix(key, "/")})
		}
		picked, err := s3helper.PartitionObjects(objects, c.Count, c.Index, source)
		if err != nil {
			row["Error"] = err.Error()
		} else {
			keys := make([]string, 0, len(picked))
			for _, object := range picked {
				keys = append(keys, *object.Key)
			}
			row["Keys"] = keys
		}
		out = append(out, row)
	}
	emit(out)
}

// regexpCases compiles each Pattern as Bacalhau does (regexp.Compile) and reports FindStringSubmatch on each
// input: null for no match, else the groups with null for one that did not take part.
func regexpCases() {
	var cases []struct {
		Pattern string
		Inputs  []string
	}
	readCases(&cases)
	out := make([]map[string]any, 0, len(cases))
	for _, c := range cases {
		re, err := regexp.Compile(c.Pattern)
		if err != nil {
			out = append(out, map[string]any{"Error": err.Error()})
			continue
		}
		matches := make([][]*string, 0, len(c.Inputs))
		for _, input := range c.Inputs {
			index := re.FindStringSubmatchIndex(input)
			if index == nil {
				matches = append(matches, nil)
				continue
			}
			groups := make([]*string, len(index)/2)
			for i := range groups {
				if index[2*i] >= 0 {
					group := input[index[2*i]:index[2*i+1]]
					groups[i] = &group
				}
			}
			matches = append(matches, groups)
		}
		out = append(out, map[string]any{"Matches": matches})
	}
	emit(out)
}

// dateCases validates each Layout as a date PartitionConfig and, for each key, does what partitionByDate does:
// time.Parse the key's first len(Layout) bytes and Format the time back (null where Parse fails).
func dateCases() {
	var cases []struct {
		Layout string
		Keys   []string
	}
	readCases(&cases)
	out := make([]map[string]any, 0, len(cases))
	for _, c := range cases {
		config := s3helper.PartitionConfig{Type: s3helper.PartitionKeyTypeDate, DateFormat: c.Layout}
		row := map[string]any{}
		if err := config.Validate(); err != nil {
			row["Error"] = err.Error()
		}
		formatted := make([]*string, 0, len(c.Keys))
		for _, key := range c.Keys {
			t, err := time.Parse(c.Layout, key[:min(len(key), len(c.Layout))])
			if err != nil {
				formatted = append(formatted, nil)
				continue
			}
			text := t.Format(c.Layout)
			formatted = append(formatted, &text)
		}
		row["Formatted"] = formatted
		out = append(out, row)
	}
	emit(out)
}

// foldOrbits lists unicode.SimpleFold's orbits (runes equal under simple case folding) of two or more runes.
func foldOrbits() {
	seen := map[rune]bool{}
	var orbits [][]rune
	for r := rune(0); r <= unicode.MaxRune; r++ {
		if seen[r] || unicode.SimpleFold(r) == r {
			continue
		}
		orbit := []rune{r}
		seen[r] = true
		for f := unicode.SimpleFold(r); f != r; f = unicode.SimpleFold(f) {
			orbit = append(orbit, f)
			seen[f] = true
		}
		orbits = append(orbits, orbit)
	}
	emit(orbits)
}
