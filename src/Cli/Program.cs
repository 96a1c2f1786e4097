using InterpMesh.Cli.CommandLine;

return CliApp.Run(args, Console.Out, Console.Error, Console.In);
