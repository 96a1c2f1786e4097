namespace InterpMesh.Cli.Tests;

/// <summary>
/// The validation System.CommandLine does from the commands' typed option declarations: ranges,
/// required options and arguments, fixed choices, existing files, unknown and repeated options. Each
/// is refused before the command runs, with exit code 2 and one line that says what to change.
/// </summary>
public sealed class CommandLineValidationTests
{
    private static readonly string Model = RepoPaths.Models("stories260K/stories260K.bin");

    [Theory]
    // A number out of range, or not a number.
    [InlineData("--grpc-port must be at least 0, got -1", "serve", "--model", "M", "--grpc-port", "-1")]
    [InlineData("--top-k must be at least 1, got 0", "forward", "--model", "M", "--ids", "1,2", "--top-k", "0")]
    [InlineData("--threads must be at least 1, got 0", "info", "--model", "M", "--threads", "0")]
    [InlineData("--timeout must be an integer, got 'soon'", "run", "probing", "--server", "http://127.0.0.1:1", "--timeout", "soon")]
    [InlineData("--temperature must be a number, got 'hot'", "generate", "--model", "M", "--prompt-ids", "1", "--max-new-tokens", "2", "--temperature", "hot")]
    [InlineData("--stop-ids must be comma-separated integers or 'none'; 'eos' is not an integer", "generate", "--model", "M", "--prompt-ids", "1", "--max-new-tokens", "2", "--stop-ids", "eos")]
    // A missing required option, argument, command or value.
    [InlineData("--ids is required (token ids, comma-separated)", "forward", "--model", "M")]
    [InlineData("--out is required (a folder to write the files to)", "artifacts", "get", "probes/x", "--server", "http://127.0.0.1:1")]
    [InlineData("--from is required (a folder whose files to upload)", "artifacts", "put", "probes/x", "--server", "http://127.0.0.1:1")]
    [InlineData("--model is required (a Hugging Face folder or a llama2.c .bin)", "serve")]
    [InlineData("artifacts rm needs an artifact name", "artifacts", "rm", "--server", "http://127.0.0.1:1")]
    [InlineData("artifacts needs a command: list, get, put, rm", "artifacts")]
    [InlineData("--ids needs a value", "forward", "--model", "M", "--ids")]
    [InlineData("--model is required (a Hugging Face folder or a llama2.c .bin), or give --server URL", "info")]
    // Unknown options, commands and stray arguments.
    [InlineData("unknown option for 'serve': --prot; see `interpmesh serve --help`", "serve", "--model", "M", "--prot", "1")]
    [InlineData("unknown options for 'jobs list': --plug, --jsn", "jobs", "list", "--plug", "p", "--jsn")]
    [InlineData("unknown jobs command 'lst'; commands: list, watch, cancel, result", "jobs", "lst")]
    [InlineData("unexpected argument 'extra' for 'info'", "info", "--model", "M", "extra")]
    [InlineData("unexpected argument 'extra' for 'config'", "config", "extra")]
    // An option given twice, a value and a flag.
    [InlineData("--ids is given twice; give it once", "forward", "--model", "M", "--ids", "1", "--ids", "2")]
    [InlineData("--loss is given twice; give it once", "forward", "--model", "M", "--ids", "1,2", "--loss", "--loss")]
    [InlineData("--quick is given twice; give it once", "demo", "--quick", "--quick")]
    // Fixed choices, dtype names, files that must exist, options that exclude each other.
    [InlineData("--logits: Argument 'sideways' not recognized. Must be one of: 'all' 'last' 'none'", "forward", "--model", "M", "--ids", "1", "--logits", "sideways")]
    [InlineData("--dtype must be float32, bfloat16 or float16, got 'f64'", "info", "--model", "M", "--dtype", "f64")]
    [InlineData("--params: File does not exist: '/nonexistent/params.json'", "run", "probing", "--server", "http://127.0.0.1:1", "--params", "/nonexistent/params.json")]
    [InlineData("--from: Directory does not exist: '/nonexistent/folder'", "artifacts", "put", "x", "--server", "http://127.0.0.1:1", "--from", "/nonexistent/folder")]
    [InlineData("give --params FILE or --params-json TEXT, not both", "run", "probing", "--server", "http://127.0.0.1:1", "--params", "CliRunner.cs", "--params-json", "{}")]
    [InlineData("with --server URL leave them out", "info", "--server", "http://127.0.0.1:1", "--model", "M")]
    [InlineData("--key and --model-name are for --server URL", "info", "--model", "M", "--key", "k")]
    public void A_wrong_command_line_is_refused_before_the_command_runs(string message, params string[] args)
    {
        args = args.Select(a => a == "M" ? Model : a == "CliRunner.cs" ? Path.Combine(RepoPaths.Root, "tests", "Cli.Tests", "CliRunner.cs") : a).ToArray();
        var r = CliRunner.Run(args);
        Assert.Equal(2, r.ExitCode);
        string line = Assert.Single(r.Stderr.Trim().Split('\n'));
        Assert.StartsWith("error: ", line, StringComparison.Ordinal);
        Assert.Contains(message, line, StringComparison.Ordinal);
        Assert.Empty(r.Stdout);
    }

    [Fact]
    public void With_json_the_error_is_also_a_json_document_on_stdout()
    {
        var r = CliRunner.Run("forward", "--model", Model, "--ids", "1", "--ids", "2", "--json");
        Assert.Equal(2, r.ExitCode);
        Assert.Equal("--ids is given twice; give it once", r.Json.GetProperty("error").GetString());
    }

    [Fact]
    public void A_long_unknown_option_is_quoted_shortened()
    {
        string option = "--" + new string('x', 200);
        var r = CliRunner.Run("info", "--model", Model, option);
        Assert.Equal(2, r.ExitCode);
        Assert.Contains("unknown option for 'info': --xxxxxxxx", r.Stderr, StringComparison.Ordinal);
        Assert.Contains("…", r.Stderr, StringComparison.Ordinal);
        Assert.DoesNotContain(option, r.Stderr, StringComparison.Ordinal);
    }

    [Fact]
    public void A_value_starting_with_an_at_sign_is_text_not_a_response_file()
    {
        var r = CliRunner.Run("tokenize", "--tokenizer", RepoPaths.Models("gpt2-tokenizer"), "--text", "@user hi", "--json");
        Assert.True(r.ExitCode == 0, r.Stderr);
        Assert.Equal(CliRunner.Run("tokenize", "--tokenizer", RepoPaths.Models("gpt2-tokenizer"), "--text", "@", "--json").Json.GetProperty("ids")[0].GetInt32(),
            r.Json.GetProperty("ids")[0].GetInt32());
    }

    [Fact]
    public void Dtype_aliases_are_accepted_by_the_typed_option()
    {
        var r = CliRunner.Run("info", "--model", Model, "--dtype", "bf16", "--json");
        Assert.True(r.ExitCode == 0, r.Stderr);
        Assert.Equal("bfloat16", r.Json.GetProperty("dtype").GetString());
    }

    [Fact]
    public void Help_marks_required_options_and_shows_defaults_from_the_declarations()
    {
        var forward = CliRunner.Run("forward", "--help");
        Assert.Equal(0, forward.ExitCode);
        Assert.Matches(@"--ids <1,2,3> \(REQUIRED\)", forward.Stdout);
        Assert.Matches(@"--logits <all\|last\|none>", forward.Stdout);
        var serve = CliRunner.Run("serve", "--help");
        Assert.Matches(@"--grpc-port <P>\s+gRPC port \(0: any free port\) \[default: 50051\]", serve.Stdout);
        Assert.Matches(@"--model <PATH> \(REQUIRED\)", serve.Stdout);
    }

    [Theory]
    [InlineData("interpmesh forward --logits ", new[] { "all", "last", "none" })]
    [InlineData("interpmesh info --dtype bf", new[] { "bfloat16" })]
    [InlineData("interpmesh serve --dtype ", new[] { "float32", "bfloat16", "float16" })]
    [InlineData("interpmesh train-toy ", new[] { "induction", "retrieval", "concepts", "functions" })]
    [InlineData("interpmesh info --device c", new[] { "cpu", "cuda", "cuda:0" })]
    public void Completion_offers_the_values_a_typed_option_accepts(string line, string[] expected)
    {
        var r = CliRunner.Run($"[suggest:{line.Length}]", line);
        Assert.Equal(0, r.ExitCode);
        var offered = r.Stdout.Split('\n', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries).Where(s => !s.StartsWith('-') && !s.StartsWith('/')).ToList();
        Assert.Equal(expected.Order(), offered.Order());
    }
}
