package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// origin is where a key's value was set.
type origin struct {
	file string
	line int
	flag string
}

// errorAt returns an Error for key located at o.
func (o origin) errorAt(key, format string, args ...any) *Error {
	return &Error{File: o.file, Line: o.line, Flag: o.flag, Key: key, Msg: fmt.Sprintf(format, args...)}
}

// planned are top-level sections that later parts of the product will read.
// None is left: the map stays for the next one.
var planned = map[string]bool{}

// Load reads the YAML file at path over Default. On a decoding problem it
// returns the Config anyway (every key that decoded is set, the others keep
// their defaults) with an Errors holding every problem; Validate reports
// those problems again together with its own, so a caller may ignore this
// error and take Validate's. A file that cannot be read returns a nil Config
// and the read error.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading config: %w", err)
	}
	return Parse(path, data)
}

// Parse is Load for data already read; name is used in error messages.
func Parse(name string, data []byte) (*Config, error) {
	c := Default()
	c.File = name
	d := decoder{cfg: c, file: name}
	d.document(data)
	c.decodeErrs = d.errs
	return c, d.errs.orNil()
}

type decoder struct {
	cfg  *Config
	file string
	errs Errors
}

func (d *decoder) at(n *yaml.Node) origin { return origin{file: d.file, line: n.Line} }

func (d *decoder) fail(n *yaml.Node, key, format string, args ...any) {
	d.errs = append(d.errs, d.at(n).errorAt(key, format, args...))
	if d.cfg.failed == nil {
		d.cfg.failed = map[string]bool{}
	}
	d.cfg.failed[key] = true
}

var yamlLine = regexp.MustCompile(`^yaml: line (\d+): `)

func (d *decoder) document(data []byte) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return // an empty file: all defaults
		}
		e := &Error{File: d.file, Msg: strings.TrimPrefix(err.Error(), "yaml: ")}
		if m := yamlLine.FindStringSubmatch(err.Error()); m != nil {
			e.Line, _ = strconv.Atoi(m[1])
			e.Msg = strings.TrimPrefix(err.Error(), m[0])
		}
		d.errs = append(d.errs, e)
		return
	}
	var more yaml.Node
	if err := dec.Decode(&more); !errors.Is(err, io.EOF) {
		d.errs = append(d.errs, &Error{File: d.file, Line: more.Line, Msg: "a second YAML document (after ---); the config is one document"})
	}
	root := resolve(&doc)
	if root.Kind == yaml.DocumentNode {
		if len(root.Content) == 0 {
			return
		}
		root = resolve(root.Content[0])
	}
	if isNull(root) {
		return
	}
	if root.Kind != yaml.MappingNode {
		d.fail(root, "", "the config must be a mapping of sections (key: value lines), not %s", describe(root))
		return
	}
	d.mapping(root, reflect.ValueOf(d.cfg).Elem(), "")
}

// mapping decodes the mapping node n into the struct v; prefix is v's key
// path ("" for the top level, else ending in ".").
func (d *decoder) mapping(n *yaml.Node, v reflect.Value, prefix string) {
	fields := fieldsByKey(v.Type())
	seen := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		kn, vn := resolve(n.Content[i]), resolve(n.Content[i+1])
		if kn.Kind != yaml.ScalarNode {
			d.fail(kn, strings.TrimSuffix(prefix, "."), "keys must be plain words, not %s", describe(kn))
			continue
		}
		key := prefix + kn.Value
		if first, dup := seen[kn.Value]; dup {
			d.fail(kn, key, "given twice (first at line %d)", first)
			continue
		}
		seen[kn.Value] = kn.Line
		idx, ok := fields[kn.Value]
		switch {
		case !ok && prefix == "" && planned[kn.Value]:
			d.fail(kn, key, "section is planned but not built yet; remove it (see config.example.yaml)")
			continue
		case !ok:
			d.fail(kn, key, "unknown key (known here: %s)", knownKeys(fields))
			continue
		}
		fv := v.Field(idx)
		d.cfg.where[key] = d.at(kn)
		if isSection(fv.Type()) {
			switch {
			case isNull(vn):
			case vn.Kind == yaml.MappingNode:
				d.mapping(vn, fv, key+".")
			default:
				d.fail(vn, key, "must be a section (indented key: value lines), not %s", describe(vn))
			}
			continue
		}
		d.leaf(vn, fv, key)
	}
}

// leaf decodes a value node into the non-section field fv.
func (d *decoder) leaf(n *yaml.Node, fv reflect.Value, key string) {
	if isNull(n) {
		return // "key:" with no value keeps the default
	}
	if fv.Kind() == reflect.Slice && fv.Type() != prefixesType && isSection(fv.Type().Elem()) {
		d.sectionList(n, fv, key)
		return
	}
	if fv.Type() == anyMapType {
		if n.Kind != yaml.MappingNode {
			d.fail(n, key, "must be a section (indented key: value lines), not %s", describe(n))
			return
		}
		var m map[string]any
		if err := n.Decode(&m); err != nil {
			d.fail(n, key, "%v", strings.TrimPrefix(err.Error(), "yaml: "))
			return
		}
		fv.Set(reflect.ValueOf(m))
		return
	}
	if fv.Type() == prefixesType {
		var items []*yaml.Node
		switch n.Kind {
		case yaml.SequenceNode:
			items = n.Content
		case yaml.ScalarNode:
			items = []*yaml.Node{n}
		default:
			d.fail(n, key, "must be a list of addresses or CIDR prefixes, not %s", describe(n))
			return
		}
		var out []netip.Prefix
		ok := true
		for i, item := range items {
			item = resolve(item)
			ikey := fmt.Sprintf("%s[%d]", key, i)
			if item.Kind != yaml.ScalarNode {
				d.fail(item, ikey, "must be an address or CIDR prefix, not %s", describe(item))
				ok = false
				continue
			}
			p, err := parsePrefix(item.Value)
			if err != nil {
				d.fail(item, ikey, "%v", err)
				ok = false
				continue
			}
			out = append(out, p)
		}
		if !ok {
			d.cfg.failed[key] = true // keep the default: a partial list would mislead
			return
		}
		fv.Set(reflect.ValueOf(out))
		return
	}
	if n.Kind != yaml.ScalarNode {
		d.fail(n, key, "must be a single value, not %s", describe(n))
		return
	}
	if err := setScalar(fv, n.Value); err != nil {
		d.fail(n, key, "%v", err)
	}
}

// sectionList decodes a list of sections (peers, policies); item i's keys
// are "key[i].field".
func (d *decoder) sectionList(n *yaml.Node, fv reflect.Value, key string) {
	if n.Kind != yaml.SequenceNode {
		d.fail(n, key, "must be a list of sections (- key: value items), not %s", describe(n))
		return
	}
	out := reflect.MakeSlice(fv.Type(), 0, len(n.Content))
	for i, item := range n.Content {
		item = resolve(item)
		ikey := fmt.Sprintf("%s[%d]", key, i)
		d.cfg.where[ikey] = d.at(item)
		elem := reflect.New(fv.Type().Elem()).Elem()
		if item.Kind != yaml.MappingNode {
			d.fail(item, ikey, "must be a section (key: value lines), not %s", describe(item))
			d.cfg.failed[key] = true
			continue
		}
		d.mapping(item, elem, ikey+".")
		out = reflect.Append(out, elem)
	}
	if out.Len() > 0 {
		fv.Set(out) // an empty list keeps the default (nil)
	}
}

var (
	anyMapType   = reflect.TypeFor[map[string]any]()
	durationType = reflect.TypeFor[time.Duration]()
	byteSizeType = reflect.TypeFor[ByteSize]()
	prefixesType = reflect.TypeFor[[]netip.Prefix]()
)

// setScalar parses text into fv according to fv's type. Errors quote text.
func setScalar(fv reflect.Value, text string) error {
	switch fv.Type() {
	case durationType:
		dur, err := time.ParseDuration(text)
		if err != nil {
			if _, nerr := strconv.ParseFloat(text, 64); nerr == nil {
				return fmt.Errorf("%q is not a duration: add a unit, e.g. %ss", text, text)
			}
			return fmt.Errorf("%q is not a duration (a number with a unit: 500ms, 5s, 1m)", text)
		}
		fv.SetInt(int64(dur))
	case byteSizeType:
		b, err := ParseByteSize(text)
		if err != nil {
			return err
		}
		fv.SetInt(int64(b))
	case prefixesType:
		var out []netip.Prefix
		for _, s := range strings.Split(text, ",") {
			if s = strings.TrimSpace(s); s == "" {
				continue
			}
			p, err := parsePrefix(s)
			if err != nil {
				return err
			}
			out = append(out, p)
		}
		fv.Set(reflect.ValueOf(out))
	default:
		switch fv.Kind() {
		case reflect.String:
			fv.SetString(text)
		case reflect.Int:
			i, err := strconv.Atoi(text)
			if err != nil {
				return fmt.Errorf("%q is not a whole number", text)
			}
			fv.SetInt(int64(i))
		case reflect.Bool:
			switch text {
			case "true":
				fv.SetBool(true)
			case "false":
				fv.SetBool(false)
			default:
				return fmt.Errorf("%q is not true or false", text)
			}
		case reflect.Uint16, reflect.Uint32:
			bits := fv.Type().Bits()
			u, err := strconv.ParseUint(text, 10, bits)
			if err != nil {
				return fmt.Errorf("%q is not a whole number from 0 to %d", text, uint64(1)<<bits-1)
			}
			fv.SetUint(u)
		default:
			panic(fmt.Sprintf("config: no decoder for field type %v", fv.Type()))
		}
	}
	return nil
}

// parsePrefix reads a CIDR prefix, or a bare address as a single host.
func parsePrefix(s string) (netip.Prefix, error) {
	if p, err := netip.ParsePrefix(s); err == nil {
		if p.Masked() != p {
			return netip.Prefix{}, fmt.Errorf("%q has host bits set; did you mean %s?", s, p.Masked())
		}
		return p, nil
	}
	if a, err := netip.ParseAddr(s); err == nil {
		a = a.Unmap()
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	return netip.Prefix{}, fmt.Errorf("%q is not an IP address or CIDR prefix such as 10.0.0.0/8 or 2001:db8::/32", s)
}

// Set lays one value over the config as if the file had it, for command-line
// flags: key is the dotted path ("listen.address"), flag names the flag in
// errors ("--listen"). A list key takes comma-separated items.
func (c *Config) Set(key, value, flag string) error {
	o := origin{flag: flag}
	v := reflect.ValueOf(c).Elem()
	parts := strings.Split(key, ".")
	for i, part := range parts {
		idx, ok := fieldsByKey(v.Type())[part]
		if !ok {
			return o.errorAt(key, "unknown key")
		}
		v = v.Field(idx)
		if isSection(v.Type()) != (i < len(parts)-1) {
			return o.errorAt(key, "not a single value")
		}
	}
	if err := setScalar(v, value); err != nil {
		return o.errorAt(key, "%v", err)
	}
	c.where[key] = o
	return nil
}

// fieldsByKey maps yaml keys to field indexes of struct type t.
func fieldsByKey(t reflect.Type) map[string]int {
	m := map[string]int{}
	for i := 0; i < t.NumField(); i++ {
		tag, _, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ",")
		if tag != "" && tag != "-" && t.Field(i).IsExported() {
			m[tag] = i
		}
	}
	return m
}

func knownKeys(fields map[string]int) string {
	keys := make([]string, 0, len(fields))
	for k := range fields {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return strings.Join(keys, ", ")
}

// isSection reports whether t is a nested section rather than a value.
func isSection(t reflect.Type) bool { return t.Kind() == reflect.Struct }

func resolve(n *yaml.Node) *yaml.Node {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	return n
}

func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a section"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		return strconv.Quote(n.Value)
	default:
		return "this"
	}
}
