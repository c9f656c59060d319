// Renders conversations with a Modelfile TEMPLATE the way Ollama does: Go's text/template with
// missingkey=zero and Ollama's one extra function (json), over the values Ollama passes a template that
// uses .Messages (System = the system messages joined, Messages = consecutive same-role messages merged).
//
// stdin: {"template": "...", "conversations": [[{"role": "...", "content": "..."}, ...], ...]}
// stdout: a JSON list with the rendered prompt of each conversation.
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"text/template"
)

type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

type Input struct {
	Template      string      `json:"template"`
	Conversations [][]Message `json:"conversations"`
}

var funcs = template.FuncMap{
	"json": func(v any) string {
		b, _ := json.Marshal(v)
		return string(b)
	},
}

// collate is Ollama's: every system message is also collected into System.
func collate(msgs []Message) (string, []*Message) {
	var system []string
	var collated []*Message
	for i := range msgs {
		if msgs[i].Role == "system" {
			system = append(system, msgs[i].Content)
		}
		if len(collated) > 0 && collated[len(collated)-1].Role == msgs[i].Role && msgs[i].Role != "tool" {
			collated[len(collated)-1].Content += "\n\n" + msgs[i].Content
		} else {
			m := msgs[i]
			collated = append(collated, &m)
		}
	}
	return strings.Join(system, "\n\n"), collated
}

func main() {
	var in Input
	if err := json.NewDecoder(os.Stdin).Decode(&in); err != nil {
		fmt.Fprintln(os.Stderr, "bad input:", err)
		os.Exit(2)
	}
	tmpl, err := template.New("").Option("missingkey=zero").Funcs(funcs).Parse(in.Template)
	if err != nil {
		fmt.Fprintln(os.Stderr, "template does not parse:", err)
		os.Exit(3)
	}
	out := []string{}
	for _, conversation := range in.Conversations {
		system, messages := collate(conversation)
		var b bytes.Buffer
		err := tmpl.Execute(&b, map[string]any{
			"System": system, "Messages": messages, "Tools": nil, "Response": "", "Think": false, "IsThinkSet": false,
		})
		if err != nil {
			fmt.Fprintln(os.Stderr, "template does not execute:", err)
			os.Exit(4)
		}
		out = append(out, b.String())
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		os.Exit(5)
	}
}
