using InterpMesh.Bench.Harness;

return BenchApp.Run(args, Console.Out, Console.Error);
