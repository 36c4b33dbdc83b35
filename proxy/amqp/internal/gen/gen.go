package gen

import (
	"bufio"
	"bytes"
	_ "embed"
	"fmt"
	"go/format"
	"strconv"
	"strings"
)

// Spec is the checked-in method description.
//
//go:embed spec.txt
var Spec []byte

// Class is one AMQP class and its methods in spec order.
type Class struct {
	ID      uint16
	Name    string
	Methods []*Method
}

// Method is one method of a class.
type Method struct {
	Class   *Class
	ID      uint16
	Name    string // as in the spec: "get-ok"
	Sync    bool
	Content bool
	Fields  []Field
}

// Field is one argument of a method.
type Field struct {
	Name   string // as in the spec: "routing-key"
	Type   string // bit octet short long longlong shortstr longstr table
	GoName string // the struct field: "RoutingKey"
}

var goTypes = map[string]string{
	"bit":      "bool",
	"octet":    "uint8",
	"short":    "uint16",
	"long":     "uint32",
	"longlong": "uint64",
	"shortstr": "string",
	"longstr":  "string",
	"table":    "Table",
}

// Parse reads a spec in spec.txt's format.
func Parse(src []byte) ([]*Class, error) {
	var classes []*Class
	var cur *Class
	seenClass := map[uint16]bool{}
	sc := bufio.NewScanner(bytes.NewReader(src))
	line := 0
	for sc.Scan() {
		line++
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		words := strings.Fields(text)
		if words[0] == "class" {
			if len(words) != 3 {
				return nil, fmt.Errorf("spec line %d: want \"class <name> <id>\"", line)
			}
			id, err := strconv.ParseUint(words[2], 10, 16)
			if err != nil {
				return nil, fmt.Errorf("spec line %d: class id %q: %w", line, words[2], err)
			}
			if seenClass[uint16(id)] {
				return nil, fmt.Errorf("spec line %d: class id %d used twice", line, id)
			}
			seenClass[uint16(id)] = true
			cur = &Class{ID: uint16(id), Name: words[1]}
			classes = append(classes, cur)
			continue
		}
		if cur == nil {
			return nil, fmt.Errorf("spec line %d: method before any class", line)
		}
		if len(words) < 3 {
			return nil, fmt.Errorf("spec line %d: want \"<id> <name> <flags> <field>:<type>...\"", line)
		}
		id, err := strconv.ParseUint(words[0], 10, 16)
		if err != nil {
			return nil, fmt.Errorf("spec line %d: method id %q: %w", line, words[0], err)
		}
		m := &Method{Class: cur, ID: uint16(id), Name: words[1]}
		for _, f := range cur.Methods {
			if f.ID == m.ID || f.Name == m.Name {
				return nil, fmt.Errorf("spec line %d: %s.%s repeats method %d %s", line, cur.Name, m.Name, f.ID, f.Name)
			}
		}
		if words[2] != "-" {
			for _, flag := range strings.Split(words[2], ",") {
				switch flag {
				case "sync":
					m.Sync = true
				case "content":
					m.Content = true
				default:
					return nil, fmt.Errorf("spec line %d: unknown flag %q", line, flag)
				}
			}
		}
		names := map[string]bool{}
		for _, w := range words[3:] {
			parts := strings.Split(w, ":")
			if len(parts) < 2 || len(parts) > 3 || parts[0] == "" {
				return nil, fmt.Errorf("spec line %d: field %q is not <name>:<type>[:<GoName>]", line, w)
			}
			name, typ, goName := parts[0], parts[1], camel(parts[0])
			if len(parts) == 3 {
				goName = parts[2]
			}
			if _, ok := goTypes[typ]; !ok {
				return nil, fmt.Errorf("spec line %d: field %s has unknown type %q", line, name, typ)
			}
			if names[name] || names[goName] {
				return nil, fmt.Errorf("spec line %d: field %s appears twice", line, name)
			}
			switch goName {
			case "ClassID", "MethodID", "Name", "HasContent", "Synchronous", "AppendArgs":
				return nil, fmt.Errorf("spec line %d: field %s would be named like a method; give it a Go name", line, name)
			}
			names[name], names[goName] = true, true
			m.Fields = append(m.Fields, Field{Name: name, Type: typ, GoName: goName})
		}
		cur.Methods = append(cur.Methods, m)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(classes) == 0 {
		return nil, fmt.Errorf("spec has no classes")
	}
	return classes, nil
}

// camel turns "routing-key" into "RoutingKey" and "id" into "ID".
func camel(s string) string {
	var b strings.Builder
	for _, part := range strings.Split(s, "-") {
		if part == "" {
			continue
		}
		if part == "id" {
			b.WriteString("ID")
			continue
		}
		b.WriteString(strings.ToUpper(part[:1]))
		b.WriteString(part[1:])
	}
	return b.String()
}

// GoName is the method's struct name: "BasicGetOk".
func (m *Method) GoName() string { return camel(m.Class.Name) + camel(m.Name) }

// FullName is the method's name as RabbitMQ writes it: "basic.get-ok".
func (m *Method) FullName() string { return m.Class.Name + "." + m.Name }

// bitGroups splits the fields into runs: a run of consecutive bits shares
// octets (at most 8 per octet), every other field is a run of its own.
func bitGroups(fields []Field) [][]Field {
	var groups [][]Field
	for i := 0; i < len(fields); {
		if fields[i].Type != "bit" {
			groups = append(groups, fields[i:i+1])
			i++
			continue
		}
		j := i
		for j < len(fields) && fields[j].Type == "bit" && j-i < 8 {
			j++
		}
		groups = append(groups, fields[i:j])
		i = j
	}
	return groups
}

// Generate returns the gofmt-ed Go files for spec src, by file name:
// methods_gen.go with the ids and the dispatch functions, and one
// methods_<class>_gen.go per class with its method structs (one file per
// class keeps each a readable size).
func Generate(src []byte) (map[string][]byte, error) {
	classes, err := Parse(src)
	if err != nil {
		return nil, err
	}
	files := map[string][]byte{}
	var b bytes.Buffer
	p := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	emit := func(name string) error {
		out, err := format.Source(b.Bytes())
		if err != nil {
			return fmt.Errorf("gofmt generated %s: %w\n%s", name, err, b.Bytes())
		}
		files[name] = out
		b.Reset()
		return nil
	}
	header := func(imports string) {
		p("// Code generated by proxy/amqp/internal/gen from spec.txt; DO NOT EDIT.\n\n")
		p("package amqp\n\n")
		if imports != "" {
			p("import %q\n\n", imports)
		}
	}

	header("")
	p("// Class ids.\nconst (\n")
	for _, c := range classes {
		p("\tClass%s uint16 = %d\n", camel(c.Name), c.ID)
	}
	p(")\n\n")

	p("// Method keys: class id<<16 | method id, as MethodKey reads them from a\n")
	p("// method frame's payload.\nconst (\n")
	for _, c := range classes {
		for _, m := range c.Methods {
			p("\t%sID uint32 = %d<<16 | %d // %s\n", m.GoName(), c.ID, m.ID, m.FullName())
		}
	}
	p(")\n\n")

	p("// newMethod returns an empty method for key, or nil for an unknown key.\n")
	p("func newMethod(key uint32) Method {\n\tswitch key {\n")
	for _, c := range classes {
		for _, m := range c.Methods {
			p("\tcase %sID:\n\t\treturn new(%s)\n", m.GoName(), m.GoName())
		}
	}
	p("\t}\n\treturn nil\n}\n\n")

	p("// decodeArgs decodes the arguments of the method with key from r, or\n")
	p("// returns nil for an unknown key. Calling each decodeArgs method directly\n")
	p("// rather than through an interface keeps r on the caller's stack.\n")
	p("func decodeArgs(key uint32, r *wireReader) Method {\n\tswitch key {\n")
	for _, c := range classes {
		for _, m := range c.Methods {
			p("\tcase %sID:\n\t\tm := new(%s)\n\t\tm.decodeArgs(r)\n\t\treturn m\n", m.GoName(), m.GoName())
		}
	}
	p("\t}\n\treturn nil\n}\n\n")

	p("// MethodName returns the name of the method with key, \"basic.publish\",\n")
	p("// or \"\" when the key is not a method RabbitMQ knows.\n")
	p("func MethodName(key uint32) string {\n\tswitch key {\n")
	for _, c := range classes {
		for _, m := range c.Methods {
			p("\tcase %sID:\n\t\treturn %q\n", m.GoName(), m.FullName())
		}
	}
	p("\t}\n\treturn \"\"\n}\n\n")

	p("// ClassName returns the name of class id, \"basic\", or \"\" when unknown.\n")
	p("func ClassName(id uint16) string {\n\tswitch id {\n")
	for _, c := range classes {
		p("\tcase Class%s:\n\t\treturn %q\n", camel(c.Name), c.Name)
	}
	p("\t}\n\treturn \"\"\n}\n")
	if err := emit("methods_gen.go"); err != nil {
		return nil, err
	}

	for _, c := range classes {
		imports := ""
		for _, m := range c.Methods {
			for _, f := range m.Fields {
				switch f.Type {
				case "short", "long", "longlong":
					imports = "encoding/binary"
				}
			}
		}
		header(imports)
		for _, m := range c.Methods {
			genMethod(p, m)
		}
		if err := emit("methods_" + c.Name + "_gen.go"); err != nil {
			return nil, err
		}
	}
	return files, nil
}

func genMethod(p func(string, ...any), m *Method) {
	name := m.GoName()
	var traits []string
	if m.Sync {
		traits = append(traits, "synchronous")
	}
	if m.Content {
		traits = append(traits, "carries content")
	}
	trait := ""
	if len(traits) > 0 {
		trait = "; " + strings.Join(traits, ", ")
	}
	p("// %s is %s (class %d, method %d%s).\n", name, m.FullName(), m.Class.ID, m.ID, trait)
	if len(m.Fields) == 0 {
		p("type %s struct{}\n\n", name)
	} else {
		p("type %s struct {\n", name)
		for _, f := range m.Fields {
			p("\t%s %s // %s %s\n", f.GoName, goTypes[f.Type], f.Name, f.Type)
		}
		p("}\n\n")
	}
	p("// ClassID is %d.\nfunc (*%s) ClassID() uint16 { return Class%s }\n\n", m.Class.ID, name, camel(m.Class.Name))
	p("// MethodID is %d.\nfunc (*%s) MethodID() uint16 { return %d }\n\n", m.ID, name, m.ID)
	p("// Name is %q.\nfunc (*%s) Name() string { return %q }\n\n", m.FullName(), name, m.FullName())
	p("// HasContent is %v.\nfunc (*%s) HasContent() bool { return %v }\n\n", m.Content, name, m.Content)
	p("// Synchronous is %v.\nfunc (*%s) Synchronous() bool { return %v }\n\n", m.Sync, name, m.Sync)

	recv := "m "
	if len(m.Fields) == 0 {
		recv = ""
	}
	p("// AppendArgs appends the encoded arguments to dst.\n")
	p("func (%s*%s) AppendArgs(dst []byte) []byte {\n", recv, name)
	for gi, g := range bitGroups(m.Fields) {
		f := g[0]
		switch f.Type {
		case "bit":
			p("\tvar bits%d uint8\n", gi)
			for i, bf := range g {
				p("\tif m.%s {\n\t\tbits%d |= 1 << %d\n\t}\n", bf.GoName, gi, i)
			}
			p("\tdst = append(dst, bits%d)\n", gi)
		case "octet":
			p("\tdst = append(dst, m.%s)\n", f.GoName)
		case "short":
			p("\tdst = binary.BigEndian.AppendUint16(dst, m.%s)\n", f.GoName)
		case "long":
			p("\tdst = binary.BigEndian.AppendUint32(dst, m.%s)\n", f.GoName)
		case "longlong":
			p("\tdst = binary.BigEndian.AppendUint64(dst, m.%s)\n", f.GoName)
		case "shortstr":
			p("\tdst = appendShortstr(dst, m.%s, %q)\n", f.GoName, m.FullName()+" "+f.Name)
		case "longstr":
			p("\tdst = appendLongstr(dst, m.%s)\n", f.GoName)
		case "table":
			p("\tdst = AppendTable(dst, m.%s)\n", f.GoName)
		}
	}
	p("\treturn dst\n}\n\n")

	p("func (%s*%s) decodeArgs(%s*wireReader) {\n", recv, name, map[bool]string{true: "r ", false: ""}[len(m.Fields) > 0])
	for gi, g := range bitGroups(m.Fields) {
		f := g[0]
		switch f.Type {
		case "bit":
			p("\tbits%d := r.bits(%q, %d)\n", gi, f.Name, len(g))
			for i, bf := range g {
				p("\tm.%s = bits%d&(1<<%d) != 0\n", bf.GoName, gi, i)
			}
		default:
			p("\tm.%s = r.%s(%q)\n", f.GoName, f.Type, f.Name)
		}
	}
	p("}\n\n")
}
